"""The embedded demo: synthetic shapes task, its tiny frozen VLM, evaluation."""
