"""The responder: the investigator, the built-in analyst, and the tool workers."""
