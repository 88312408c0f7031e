"""The admin panel in a unit test: a data dir made by the real ``mailstead init``, the Flask app
on it, and a test client that behaves like a browser on the panel's HTTPS origin.

    panel = Panel.create(tmp_path, dns_server)          # admin@example.test, PASSWORD
    panel.login("admin@example.test")
    r = panel.post("/domains/add", {"domain": "new.test"})   # CSRF token + same-origin Referer

Browser-like means: every request is https://localhost (the session cookie is ``Secure`` and
``__Host-``), every POST carries the ``csrf_token`` from a rendered page and a same-origin
``Referer`` (flask-wtf checks it on HTTPS, as browsers send it under our Referrer-Policy).

``init`` takes about half a second, so each data dir is copied from a template made once per
(DNS server, extra config); the template is never opened by an app, so no copy shares a secret
key, a database or a Maildir with another.
"""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile
from pathlib import Path

from admin import Services, create_app
from tests.support.instance import PASSWORD, Instance

ORIGIN = "https://localhost"
ADMIN = "admin@example.test"
USER = "user@example.test"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_TEMPLATES: dict[tuple[str, str], Instance] = {}
_TEMPLATE_ROOT: Path | None = None


def _template(nameserver: str, extra_config: str) -> Instance:
    global _TEMPLATE_ROOT
    key = (nameserver, extra_config)
    if key not in _TEMPLATES:
        if _TEMPLATE_ROOT is None:
            _TEMPLATE_ROOT = Path(tempfile.mkdtemp(prefix="mailstead-panel-"))
            atexit.register(shutil.rmtree, _TEMPLATE_ROOT, True)
        root = _TEMPLATE_ROOT / str(len(_TEMPLATES))
        _TEMPLATES[key] = Instance(root, nameserver, extra_config=extra_config)
    return _TEMPLATES[key]


def instance(root: Path, nameserver: str, extra_config: str = "") -> Instance:
    """An Instance (not started) in ``root``, as ``Instance(root, nameserver)`` would make."""
    template = _template(nameserver, extra_config)
    inst = Instance.__new__(Instance)
    vars(inst).update(vars(template))
    inst.root = Path(root)
    inst.data_dir = inst.root / "data"
    inst.config_path = inst.data_dir / "mailstead.toml"
    inst.log_path = inst.root / "mailstead.log"
    shutil.copytree(template.data_dir, inst.data_dir)
    text = inst.config_path.read_text()
    old = f'data_dir = "{template.data_dir}"'
    assert old in text, "init wrote data_dir differently; update tests/support/panel.py"
    inst.config_path.write_text(text.replace(old, f'data_dir = "{inst.data_dir}"'))
    return inst


class Panel:
    def __init__(self, inst: Instance, services: Services | None = None):
        self.inst = inst
        self.services = services or Services()
        if self.services.accounts is None:
            self.services.accounts = inst.accounts
        self.accounts = self.services.accounts
        self.app = create_app(inst.config, self.services, testing=True)
        self.client = self.app.test_client()

    @classmethod
    def create(cls, root: Path, dns_server, *, extra_config: str = "",
               users: bool = True, **services) -> Panel:
        """A panel on a fresh data dir; with ``users``, ADMIN (admin) and USER exist."""
        inst = instance(root, dns_server.nameserver, extra_config)
        if users:
            inst.add_user(ADMIN, admin=True)
            inst.add_user(USER)
        return cls(inst, Services(**services))

    def another(self) -> Panel:
        """A second browser on the same app (its own cookies)."""
        other = Panel.__new__(Panel)
        vars(other).update(vars(self))
        other.client = self.app.test_client()
        return other

    # --- requests ---

    def get(self, path: str, **kwargs):
        return self.client.get(path, base_url=ORIGIN, **kwargs)

    def request(self, method: str, path: str, **kwargs):
        return self.client.open(path, method=method, base_url=ORIGIN, **kwargs)

    def csrf_token(self) -> str:
        """The token from a page of this session (the login page, or once signed in the
        account page, whose header has the sign-out form)."""
        page = self.get("/login")
        if page.status_code == 302:
            page = self.get("/account/")
        match = _CSRF.search(page.get_data(as_text=True))
        assert match, f"no csrf_token on the page ({page.status_code})"
        return match.group(1)

    def post(self, path: str, data: dict | None = None, *, csrf: bool = True,
             referer: str | None = None, **kwargs):
        data = dict(data or {})
        if csrf:
            data.setdefault("csrf_token", self.csrf_token())
        headers = {"Referer": referer or f"{ORIGIN}/", **kwargs.pop("headers", {})}
        return self.client.post(path, base_url=ORIGIN, data=data, headers=headers, **kwargs)

    def follow(self, response):
        """The page a 302/303 leads to (where form errors and confirmations are flashed)."""
        assert response.status_code in (302, 303), response.status_code
        return self.get(response.headers["Location"])

    # --- signing in ---

    def login(self, address: str = ADMIN, password: str = PASSWORD):
        r = self.post("/login", {"address": address, "password": password})
        assert r.status_code == 302 and not r.headers["Location"].endswith("/login"), \
            f"login as {address} failed: {r.status_code}"
        return r

    def session_cookie(self):
        return self.client.get_cookie("__Host-mailstead", domain="localhost")


def text(response) -> str:
    return response.get_data(as_text=True)


def flashes(response) -> list[str]:
    """The flash messages (confirmations and form errors) on a page."""
    import html

    return [html.unescape(m) for m in
            re.findall(r'<p class="flash [a-z]+" role="(?:status|alert)"[^>]*>(.*?)</p>',
                       text(response), re.S)]
