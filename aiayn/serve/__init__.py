"""The REST API and web page (``aiayn serve``)."""
