"""Who is calling: bearer tokens (HS256 keys or an issuer's JWKS) verified into the caller's user id."""
