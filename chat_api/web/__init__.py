"""The browser client: static HTML, CSS and JavaScript modules served by the service itself at `/`.

On when `CHAT_API_WEB_CLIENT=true` and always in `chat-api dev`; off by default in `serve`. No build
step, no framework, nothing from a CDN. See README.md beside this file for how the page signs in and
how it authenticates its event stream (a short-lived stream-only cookie, chat_api/auth/streamcookie.py;
never a token in a URL).
"""
