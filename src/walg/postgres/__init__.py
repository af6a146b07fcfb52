"""Everything that talks to PostgreSQL or reads its data directory."""
