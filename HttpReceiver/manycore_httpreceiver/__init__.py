"""HttpReceiver: takes complete messages as ``POST /v1/mail/send`` and puts them on P0/P1;
also serves the suppression list's API (``/v1/suppressions``) and one-click unsubscribe
(``/v1/unsubscribe/<token>``, which emits ``unsubscribe`` events)."""
