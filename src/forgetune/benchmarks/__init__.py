"""Data generators and loaders with ground-truth noise labels."""
