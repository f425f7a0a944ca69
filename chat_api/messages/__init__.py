"""Messages: send, history, edit, delete, read markers."""
