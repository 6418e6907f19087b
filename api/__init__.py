"""The HTTP front end: store events in, journeys out."""
