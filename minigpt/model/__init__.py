"""The transformer: its configuration, the model, the loss, and reading and writing its weights."""
