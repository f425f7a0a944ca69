"""Web client tests: its routes through real HTTP and the page in Debian's Chromium."""
