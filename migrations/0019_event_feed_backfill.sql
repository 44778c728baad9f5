-- stowage: no-transaction
-- Events from before 0018 join the feed, a batch per transaction (the procedure in 0018).
CALL event_feed_backfill();
