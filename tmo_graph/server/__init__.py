"""`tmo-graph serve`: the graph behind an OpenAI-compatible chat API (as RouteLLM serves its
routers), so any OpenAI client or chat UI talks to it unchanged. The app is
:func:`tmo_graph.server.app.create_app`; this package imports nothing, so the key commands
(:mod:`tmo_graph.server.keys`) run without FastAPI installed.

Endpoints: ``POST /v1/chat/completions`` (plain and streamed), ``GET /v1/models``,
``GET /v1/threads/{thread}/media/{sha256}`` (a thread's stored image or clip, for its owner),
``POST /v1/feedback`` (a user's score of a turn: :mod:`tmo_graph.server.feedback`),
``GET /health``, ``GET /metrics`` (Prometheus, as ``telemetry.metrics`` allows:
:mod:`tmo_graph.server.metrics`). The same app mounts on ``langgraph dev``
(:func:`app.create_platform_app`), whose own auth checks the same keys
(:mod:`tmo_graph.server.platform_auth`).

The modules, by concern: ``app`` (the app, its state, its start and stop), ``routes`` (the
endpoints), ``auth`` (who is asking: the API key as a FastAPI dependency, the user, the
thread's owner), ``keys`` (the key file), ``limits`` (rate and size limits), ``schemas``
(the request's shape, model names), ``messages`` (a request's messages as the thread's),
``continuity`` (which thread a request that names none continues, or forks), ``turns``
(turns as tasks), ``responses`` (a completion or its server-sent events),
``chores`` (a front-end's own requests: titles, tags ..., answered on the device),
``media`` (a thread's stored media, for its owner), ``platform_auth`` (the LangGraph
server's auth on the same keys),
``errors`` (OpenAI's error shape and the handlers), ``runtime`` (the app's typed state).

Who may do what (:mod:`tmo_graph.server.keys`, :mod:`tmo_graph.threads.owners`):

- Every ``/v1`` request needs an API key, ``Authorization: Bearer <key>`` (the ``openai``
  client's ``api_key``) or ``x-api-key``: none, a wrong one or a revoked one is a 401. The
  key decides the user (threads, memory and daily cap are the user's); a ``user`` field or
  ``x-tmo-user`` header naming anyone else is a 403, never honoured, except from a trusted
  proxy's key (``proxy: true``), whose requests name their end user (also by
  ``server.end_user_header``), who then acts as ``<key user>/<end user>``. A key may be
  limited to some policies (403 for the others), to a daily cost cap and to a rate (429
  with ``Retry-After``).
  Only a server on 127.0.0.1 may run without keys (``no_auth``); it then trusts the
  ``user`` field (else the ``x-tmo-user`` header, else the end-user header, else
  ``anonymous``).
- A thread belongs to the user whose request started it (kept in the thread store, so a
  restarted server and every worker on the same PostgreSQL know it). Naming a thread that
  is not the caller's, or that does not exist, is the same 404, so ids cannot be probed;
  new thread ids are 128 random bits. Without keys a thread no one owns yet is taken by the
  first user who names it.
- One request may carry at most ``server.max_body_bytes`` (413) and, counted over what its
  thread does not hold yet, ``server.max_messages`` messages, ``server.max_images`` images
  and ``server.max_audio`` audio parts of at most ``server.max_image_bytes`` /
  ``server.max_audio_bytes`` each (413), and ask at most ``server.max_tokens``
  (:mod:`tmo_graph.server.limits`). CORS headers only for ``server.cors_origins``.
- Errors never echo the caller's key, another user's data or a stack trace; logs and the
  audit log name a key by its id.

The dialogue:

- ``model`` names the policy and, optionally, the confidence threshold: ``tmo-cascade``,
  ``tmo-cascade-0.35`` (``confidence_threshold=0.35``), ``tmo-always-local`` ...
- The dialogue lives in a graph thread. Header ``x-tmo-thread-id`` names it; without it the
  request continues the caller's thread whose dialogue it repeats, or the one
  ``server.thread_header`` names, or forks one at an edited or regenerated turn, else starts
  a new thread (:mod:`tmo_graph.server.continuity`); the id comes back in the
  ``x-tmo-thread-id`` header and the ``tmo.thread_id`` field. The thread already holds the
  dialogue, so a turn sends it only the messages it does not have
  (:func:`tmo_graph.conversation.new_messages`, the chat model's rule, lenient): an empty
  thread takes the whole conversation; otherwise the messages after the thread's last
  answer, found in the request by role and text, else (a client that shows the answer
  reformatted, or sends another history) the trailing user message(s) after the request's
  last assistant message. System (or developer) messages become the thread's one persona
  message, replaced when the client changes it.
- A user message may carry ``"private": true`` (a JSON boolean): that turn is answered on
  the device and the message and its answer never reach the cloud (:mod:`tmo_graph.guards.privacy`).
- Image parts (``image_url``) must be data URLs or http(s) URLs: the server never reads its
  own files for a client. They are checked before the turn starts.
- Audio parts: OpenAI ``input_audio`` (``{"data": base64, "format": "wav"}``)
  or a LangChain ``audio`` block with ``base64`` data (never a URL or a file on this
  machine), in WAV, FLAC, MP3 or OGG Vorbis, checked before the turn starts. A message may
  be a voice note alone. The clip is transcribed on the device and goes to the cloud only
  when the route sends it (``tmo.audio_sent``).
- ``max_tokens`` / ``max_completion_tokens`` (up to the ceiling) shorten the answer, local
  or cloud, below the config's limits; ``temperature`` and the other sampling fields are
  accepted and ignored; ``n`` other than 1 is refused. ``tools`` / ``tool_choice``, assistant
  ``tool_calls`` and ``role: "tool"`` results are taken; a turn offering tools goes to the
  cloud with them when it may (``docs/tools.md``), and tool calls come back in OpenAI's shape.
- ``usage`` counts the tokens of the turn's model calls (the local model's prompt tokens
  are not counted: the graph records 0 for them); ``tmo`` holds the turn record
  (route, views_sent, confidence, escalated, fallback, latency_s, cost_usd, budget_left,
  thread_id ...), also sent as ``x-tmo-*`` headers on plain responses and in the last
  chunk of a stream.
- Errors have OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400 for
  input to fix, 401 / 403 as above, 404 for an unknown model or thread, 409 when the thread
  is still answering another turn after ``thread_wait_s``, 413 over a size limit, 429 over
  the key's rate, 503 over ``max_concurrent_turns``, 500 (logged, no details) for anything
  else.

A stream sends its role chunk at once and ``: keep-alive`` comments every
``server.keepalive_s`` while nothing else goes (a cascade deciding its draft). A front-end's
chore (Open WebUI's title, tags, follow-up prompts ..., or a request marked ``x-tmo-chore:
1``) is answered by the local model directly: no thread, budget or cloud
(:mod:`tmo_graph.server.chores`).

A turn runs in its own task: a client that disconnects mid-answer does not cut it, so the
thread never keeps a question without its answer. Several workers may share one thread
store (PostgreSQL at ``threads.url``) and continue each other's threads; the per-thread lock
(``tmo_graph.conversation``) is per process, so concurrent turns of one thread belong on one
worker. The rate limit is counted per worker too.
"""
