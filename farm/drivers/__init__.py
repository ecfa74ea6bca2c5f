"""Queue drivers: database (SQLAlchemy), amqp (pika), sync (inline)."""
