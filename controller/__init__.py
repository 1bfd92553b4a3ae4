"""The controller: reads the source of truth, serves mesh state, is the certificate authority."""
