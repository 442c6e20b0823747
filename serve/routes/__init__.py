"""serve's routes, one :class:`fastapi.APIRouter` per module; :func:`serve.app.create_app` wires them.

* :mod:`~serve.routes.health` — open: ``/v2``, ``/v2/health/*``, ``/metrics``
* :mod:`~serve.routes.models` — key-protected OIP model list, metadata, readiness
* :mod:`~serve.routes.predict` — key-protected ``/predict`` and ``/predict/batch``
* :mod:`~serve.routes.infer` — key-protected OIP ``/infer``
* :mod:`~serve.routes.pages` — the web page and static files
"""
