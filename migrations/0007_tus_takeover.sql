-- A tus upload whose lease was ever taken over from a holder that did not release it (its
-- lease ran out: stalled, cut off from Postgres, or killed). Such a holder may still have
-- the upload's file open and write or truncate it; the upload is then published by copying
-- its file into a new one, never by a hard link that would share the inode with that writer.
ALTER TABLE tus_uploads ADD COLUMN taken_over boolean NOT NULL DEFAULT false;
