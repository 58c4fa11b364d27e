"""beit3-plugins core."""
