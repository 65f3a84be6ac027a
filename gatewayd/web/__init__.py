"""The web console (docs/web.md): jobs, received faxes with previews, and sending from the browser."""
