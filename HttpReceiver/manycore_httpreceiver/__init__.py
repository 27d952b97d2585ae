"""HttpReceiver: takes complete messages as ``POST /v1/mail/send`` and puts them on P0/P1."""
