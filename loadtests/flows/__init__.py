"""One module per user flow."""
