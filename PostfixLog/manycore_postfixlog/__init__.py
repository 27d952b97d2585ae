"""PostfixLog: feeds a private Postfix from INCOMING-TO-POSTFIX and turns its log into
exactly one delivered/bounce event per recipient."""
