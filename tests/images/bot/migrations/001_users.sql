CREATE TABLE users (
    chat_id BIGINT PRIMARY KEY,
    first_name TEXT NOT NULL,
    first_seen TIMESTAMPTZ NOT NULL DEFAULT now()
);
