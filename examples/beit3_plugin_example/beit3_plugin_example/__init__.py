"""Example task plugin package for beit3-plugins (see README.md). Importing it has no side effects;
the entry point imports ``beit3_plugin_example.shape_colors`` (the task) and ``.pipeline`` (its pipeline); the zoo reads ``.zoo:ENTRIES``."""
