DROP TABLE audit_log;
DROP TABLE attempts;
DROP TABLE deliveries;
DROP TABLE messages;
DROP TABLE endpoint_secrets;
DROP TABLE endpoints;
