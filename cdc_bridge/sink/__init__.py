"""NATS JetStream: connecting and auth, the publisher (window and acks), the order
guard, reconciling with what the stream holds, subject coverage."""
