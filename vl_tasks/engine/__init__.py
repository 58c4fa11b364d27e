"""The VL trainer's engine, one concern per module: ``distributed`` (process group, device), ``precision``
(autocast / grad scaler), ``state`` (RNG state, atomic checkpoints, output-dir probe), ``logging``
(metrics.csv, TensorBoard, curves) and ``loop`` (the epochs: optimisation steps, non-finite losses,
evaluation, checkpoints). ``beit3_plugins.vl_tasks.train`` builds the parts and calls :func:`loop.fit`."""
