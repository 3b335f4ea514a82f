-- Least-privilege users of TRD 7.1.1, parameterised by session variables so the same file
-- serves the source and the target server and no password is written into the repository.
--
-- The caller (demo/grants.sh in the MariaDB image, or any client) sets the variables first:
--   source server:  SET @source_db = 'demo_source', @reader_user = 'dlt_reader', @reader_pass = '...';
--   target server:  SET @target_db = 'demo_target', @writer_user = 'dlt_writer', @writer_pass = '...';
-- A user whose variable is NULL is skipped (each statement degrades to `DO 0`).
--
-- Reader (source): SELECT on the source database only. PROCESS lets the daemon's query watchdog
-- see its own long-running queries; without it only the watchdog degrades.
-- Writer (target): SELECT, INSERT, UPDATE, DELETE, CREATE, ALTER, INDEX, DROP on the target
-- database, plus CREATE TEMPORARY TABLES so upserts stage each chunk in a temporary table
-- (without it the daemon falls back to regular `_dlt_stage__<table>` tables, dropped after each
-- load). Named locks (GET_LOCK, used for table leases) need no grant.
-- SHOW DATABASES from TRD 7.1.1 is deliberately not granted: the daemon names its databases.

-- Identifiers and strings are quoted here, so values may contain any character.
SET @reader_account = IF(@reader_user IS NULL, NULL, CONCAT(QUOTE(@reader_user), '@''%'''));
SET @writer_account = IF(@writer_user IS NULL, NULL, CONCAT(QUOTE(@writer_user), '@''%'''));
SET @source_schema = CONCAT('`', REPLACE(@source_db, '`', '``'), '`');
SET @target_schema = CONCAT('`', REPLACE(@target_db, '`', '``'), '`');

-- Source: read-only.
EXECUTE IMMEDIATE IF(@reader_account IS NULL, 'DO 0',
    CONCAT('CREATE OR REPLACE USER ', @reader_account, ' IDENTIFIED BY ', QUOTE(@reader_pass)));
EXECUTE IMMEDIATE IF(@reader_account IS NULL, 'DO 0',
    CONCAT('GRANT SELECT ON ', @source_schema, '.* TO ', @reader_account));
EXECUTE IMMEDIATE IF(@reader_account IS NULL, 'DO 0',
    CONCAT('GRANT PROCESS ON *.* TO ', @reader_account));

-- Target: writer with schema management.
EXECUTE IMMEDIATE IF(@writer_account IS NULL, 'DO 0',
    CONCAT('CREATE OR REPLACE USER ', @writer_account, ' IDENTIFIED BY ', QUOTE(@writer_pass)));
EXECUTE IMMEDIATE IF(@writer_account IS NULL, 'DO 0',
    CONCAT('GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, ALTER, INDEX, DROP ON ', @target_schema,
           '.* TO ', @writer_account));
EXECUTE IMMEDIATE IF(@writer_account IS NULL, 'DO 0',
    CONCAT('GRANT CREATE TEMPORARY TABLES ON ', @target_schema,
           '.* TO ', @writer_account));
EXECUTE IMMEDIATE IF(@writer_account IS NULL, 'DO 0',
    CONCAT('GRANT PROCESS ON *.* TO ', @writer_account));
