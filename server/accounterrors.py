"""The account store's exceptions, apart so that server.credentials can raise them without
importing server.accounts (which mixes it in). Import them from server.accounts as before."""

from __future__ import annotations


class AccountError(Exception):
    """A request the store refuses; the message is fit to show the user."""


class NotLocal(AccountError):
    pass


class UnknownRecipient(AccountError):
    pass


class MailboxDisabled(AccountError):
    pass


class AliasLoop(AccountError):
    pass
