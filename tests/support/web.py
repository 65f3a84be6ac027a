"""Constants shared by the web console tests and their fixtures."""

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
PASSWORDS = {"admin@example.com": "admin-pw", "bob@example.com": "bob-pw", "carol@example.com": "carol-pw"}
EXTENSION = 122
