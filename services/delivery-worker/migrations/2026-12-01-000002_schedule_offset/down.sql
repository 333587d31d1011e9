ALTER TABLE deliveries DROP COLUMN schedule_offset;
