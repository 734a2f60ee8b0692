"""Docker label keys: the state rolling-sandbox keeps (with the record on the state volume).

Every container, network, volume and image the project creates carries
``LABEL_PROJECT`` (the project name) or, for images, ``LABEL_ROLE`` = "image";
``down`` and test teardown select by these labels and never touch anything else.
"""

from __future__ import annotations

PREFIX = "io.rolling-sandbox"

LABEL_MANAGED = f"{PREFIX}.managed"  # "true" on everything we create
LABEL_PROJECT = f"{PREFIX}.project"  # project name
LABEL_ROLE = f"{PREFIX}.role"  # "app", "lb", "network", "image", "volume", "redis", "state"
LABEL_SLOT = f"{PREFIX}.slot"  # "1".."N" for app containers
LABEL_VERSION = f"{PREFIX}.version"  # "v1", "green", ...: the version the container was created with
LABEL_FROM = f"{PREFIX}.from-version"  # version the fleet had when a roll created it
LABEL_PORT = f"{PREFIX}.port"  # the port published on 127.0.0.1 (lb; postgres: its server's, for hooks)
LABEL_ADMIN_TOKEN = f"{PREFIX}.admin-token"  # the LB admin listener's token (lb only, --lb-apply dynamic)
LABEL_ENGINE = f"{PREFIX}.engine"  # "docker" or "swarm": the runtime that started the fleet (lb only)
LABEL_VERSIONS = f"{PREFIX}.versions"  # JSON {"toy", "versions": {name: image}} (lb only)
LABEL_APP_PORT = f"{PREFIX}.app-port"  # the port the app listens on (app only)
LABEL_INPUTS = f"{PREFIX}.inputs"  # hash of an image's build inputs (images only)
LABEL_NODE = f"{PREFIX}.node"  # a cluster worker's hostname (its container, its Swarm node)
LABEL_NODE_SOCKET = f"{PREFIX}.node-socket"  # a cluster worker's engine socket on this machine
LABEL_SWARM_INIT = f"{PREFIX}.swarm-init"  # "true" on the cluster network when `cluster up` made the swarm
LABEL_GWBRIDGE_MADE = f"{PREFIX}.gwbridge-made"  # "true" when docker_gwbridge did not exist before it

ROLE_APP = "app"
ROLE_LB = "lb"
ROLE_NETWORK = "network"
ROLE_IMAGE = "image"
ROLE_VOLUME = "volume"
ROLE_REDIS = "redis"  # the shared session store (`--sessions shared`)
ROLE_POSTGRES = "postgres"  # the project's database (`up --service postgres`)
ROLE_MIGRATE = "migrate"  # a one-off migration container (`roll --migrate`)
ROLE_NODE = "node"  # a cluster worker: an engine in a container (`sandbox cluster up`)
ROLE_STATE = "state"  # the project's state volume: the controller's record of the fleet, kept when the LB goes


def project_labels(project: str, role: str, **extra: str) -> dict[str, str]:
    """Labels for an object of ``project`` with ``role``, plus ``extra`` (already keyed)."""
    labels = {LABEL_MANAGED: "true", LABEL_PROJECT: project, LABEL_ROLE: role}
    labels.update(extra)
    return labels


Filters = dict[str, str | list[str] | bool]  # the Docker SDK's type for a ``filters`` argument


def project_filter(project: str, role: str | None = None) -> Filters:
    """A Docker SDK ``filters`` dict that selects exactly this project's objects."""
    wanted = [f"{LABEL_MANAGED}=true", f"{LABEL_PROJECT}={project}"]
    if role is not None:
        wanted.append(f"{LABEL_ROLE}={role}")
    return {"label": wanted}
