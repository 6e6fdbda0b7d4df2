"""Small shared utilities: errors, progress, metrics files."""
