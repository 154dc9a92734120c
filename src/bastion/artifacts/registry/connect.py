"""Open the registry the way every command does: a service by URL, or the database directly.

:func:`open_registry` is the one place that decides whose identity a command acts under:

* with a service URL, a :class:`~bastion.artifacts.registry.client.RegistryClient` whose
  identity is the owner of the API key (``BASTION_REGISTRY_TOKEN``); naming an actor is refused;
* without one, a direct :class:`~bastion.artifacts.registry.core.Registry` acting as the login
  name. The first login to use a new database is recorded as its administrator, and only an
  administrator by the database's own record may act as someone else (``actor``).
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Sequence
from typing import Any

from bastion.errors import ConfigurationError

__all__ = ["login_name", "open_registry", "open_registry_from_env"]


def login_name() -> str:
    """The operating-system login name: the identity of direct mode."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        raise ConfigurationError("cannot tell your login name; use the registry service"
                                 " (--registry-url) with an API key") from None


def open_registry(*, url: str | None = None, metadata_url: str | None = None,
                  storage_url: str | None = None, actor: str | None = None,
                  trusted_keys: Sequence[Any] = (), kek_file: Any = None,
                  checkpoint: Any = None, checkpoint_key: Any = None,
                  direct_only: str | None = None) -> Any:
    """A :class:`RegistryClient` (``url`` given) or a direct :class:`Registry` (see module).

    ``direct_only`` names an operation that needs the database itself (refused with a URL).
    """
    if url:
        if direct_only:
            raise ConfigurationError(f"{direct_only} runs against the database directly; unset"
                                     " --registry-url / BASTION_REGISTRY_URL")
        if actor:
            raise ConfigurationError("--actor / BASTION_ACTOR cannot be used with a registry"
                                     " service: your identity comes from the API key")
        from bastion.artifacts.registry.client import RegistryClient

        return RegistryClient(url)
    from bastion.artifacts.registry.core import Registry

    kek = None
    if kek_file is not None:
        from bastion.artifacts.encryption import load_kek

        kek = load_kek(kek_file)
    login = login_name()
    reg = Registry(metadata_url, storage_url, actor=login, trusted_keys=trusted_keys, kek=kek,
                   checkpoint=checkpoint, checkpoint_key=checkpoint_key)
    try:
        reg.bootstrap_admin(login)
        if actor and actor != login:
            if not reg.is_admin(login):
                raise ConfigurationError(
                    f"--actor/BASTION_ACTOR {actor!r} refused: in direct mode you act as your"
                    f" login {login!r}, and only a registry administrator (by the database's"
                    " record) may act for someone else; share the registry through"
                    " `bastion registry serve` and API keys instead")
            reg.actor = actor
    except BaseException:
        reg.close()
        raise
    return reg


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def open_registry_from_env() -> Any:
    """:func:`open_registry` configured from the ``BASTION_REGISTRY_*`` environment, as
    ``bastion registry`` reads it (for commands that take ``registry://`` references)."""
    env = os.environ.get
    return open_registry(
        url=env("BASTION_REGISTRY_URL"), metadata_url=env("BASTION_REGISTRY_METADATA_URL"),
        storage_url=env("BASTION_REGISTRY_STORAGE_URL"), actor=env("BASTION_ACTOR"),
        trusted_keys=_split(env("BASTION_TRUSTED_KEYS")),
        kek_file=env("BASTION_REGISTRY_KEK_FILE"),
        checkpoint=env("BASTION_REGISTRY_CHECKPOINT"),
        checkpoint_key=env("BASTION_REGISTRY_CHECKPOINT_KEY"))
