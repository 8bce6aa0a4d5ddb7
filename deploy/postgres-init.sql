-- A table to replicate out of the box (BRIDGE_TABLE=demo in .env.example).
CREATE TABLE IF NOT EXISTS demo (id serial PRIMARY KEY, note text, created_at timestamptz DEFAULT now());
