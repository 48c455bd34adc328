"""`sr4 serve`: a local web app to compare upscalers side by side (optional extra ``sr4[web]``).

- ``candidates``: which upscalers the page offers (all named on the command line) and the one
  function that loads them;
- ``uploads``: what an upload must be before it touches the disk (size, type by content, pixels);
- ``jobs``: per-tab workspaces, the job queue (one worker per device), results and scores;
- ``app``: the Starlette application (routes, Host/Origin guard, static page);
- ``static/``: the page itself, plain HTML/CSS/JS, served from the package (works offline).

Importing this package loads nothing heavy; starlette and uvicorn are needed only by ``app``.
"""
