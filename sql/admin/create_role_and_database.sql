-- Creates the service's own database and a least-privilege role for it.
-- Run as a superuser with psql; safe to run again:
--   psql -v ON_ERROR_STOP=1 -U postgres -v password="'secret'" -f sql/admin/create_role_and_database.sql
-- Without -v password the role has no password (for trust or peer authentication).
--
-- The role can log in and connect to its own database, and owns one schema there, in
-- which the service creates its tables at start. It is not a superuser, cannot create
-- databases or roles, cannot create objects in `public`, and has no rights on any other
-- database beyond what PUBLIC already has.

\set ON_ERROR_STOP on
\if :{?password}
\else
  \set password NULL
\endif

SELECT 'CREATE ROLE orders_svc LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'orders_svc') \gexec
ALTER ROLE orders_svc PASSWORD :password;

SELECT 'CREATE DATABASE orders'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'orders') \gexec

\connect orders
REVOKE ALL ON DATABASE orders FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE orders TO orders_svc;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
CREATE SCHEMA IF NOT EXISTS orders AUTHORIZATION orders_svc;
ALTER ROLE orders_svc IN DATABASE orders SET search_path = orders;
