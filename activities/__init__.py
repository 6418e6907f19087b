"""Activities: the only code in a journey that touches the database, templates or SMTP."""
