"""The operator page: a local web page at the line (docs/operator.md).

:mod:`edge_agent.operator.server` serves it (aiohttp, a component under the supervisor);
:mod:`edge_agent.operator.board` keeps what the line board shows, from the engine's reports;
the page itself (HTML, CSS, JavaScript, Korean and English strings) ships in ``static/``, with no
build step and nothing fetched from the internet.
"""
