"""Example task plugin package for beit3-plugins (see README.md). Importing it has no side effects;
the entry point imports ``beit3_plugin_example.shape_count``, which registers the task."""
