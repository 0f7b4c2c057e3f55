"""One module per benchmark: its local file layout, prompt and official metric."""
