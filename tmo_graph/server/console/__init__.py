"""The console: ``/console`` on ``tmo-graph serve``, pages for the people who use and run the
server, on the same API keys as ``/v1``.

- **Threads** (``/console``): the caller's threads, newest first (an admin key: everyone's,
  with the user), each with its number of turns, route mix and spend; a box that starts a
  new chat.
- **One thread** (``/console/threads/{id}``): the dialogue, each answer with its route badge
  (device, cloud text, cloud + views), confidence, escalated / fell back, latency and cost;
  what left the device (thumbnails of the images sent, names of other views and clips; a
  private turn shown as kept on the device; personal data kept from the cloud as counts by
  kind, never the values); the latency and money budgets left across the turns; a chat box
  that streams the next answer (a local draft greyed while the confidence check may still
  replace it, then the final answer).
- **Overview** (``/console/overview``, admin keys only; 404 for others): cloud spend per user
  per UTC day against the daily cap, the route mix per day, escalations, fall-backs, breaker
  openings, p50 / p95 latency per route, and cloud money spent against what an always-cloud
  policy would have paid for the same turns.

Each page is HTML rendered on the server (Jinja2) with its charts drawn as inline SVG, one
stylesheet and one small script served from the package: no CDN, works offline. The same
numbers come as JSON under ``/console/api/...`` (threads, one thread, overview). The login
form puts the key in an HttpOnly cookie (:mod:`.access`); a script may send it as a Bearer
header instead. A key that opens another user's thread gets the API's 404.

The modules: ``access`` (who is looking), ``reading`` (threads, states, audit lines),
``chat`` (the chat box's turn and stream),
``dialogue`` (one thread's turns), ``overview`` (the admin's numbers), ``charts`` (SVG),
``routes`` (the endpoints).
"""

from tmo_graph.server.console.routes import router

__all__ = ["router"]
