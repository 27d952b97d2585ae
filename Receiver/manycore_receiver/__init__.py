"""Receiver: takes complete messages over SMTP submission and puts them on P0/P1."""
