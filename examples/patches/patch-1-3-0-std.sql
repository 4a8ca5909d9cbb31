-- Back to `std`: a new nullable column is cheap (no table rewrite).
ALTER TABLE customer ADD COLUMN display_name text;
COMMENT ON COLUMN customer.display_name IS 'shown in the UI; NULL means use the email';
