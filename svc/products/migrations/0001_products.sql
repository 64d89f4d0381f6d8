CREATE TABLE categories (
    id         UUID PRIMARY KEY,
    slug       TEXT        NOT NULL UNIQUE,
    name       TEXT        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A product is never deleted: a soft delete makes it inactive, so that old orders can still
-- show it. `version` is its ETag; every change bumps it.
CREATE TABLE products (
    id           UUID PRIMARY KEY,
    sku          TEXT        NOT NULL UNIQUE,
    name         TEXT        NOT NULL,
    description  TEXT        NOT NULL DEFAULT '',
    price_amount BIGINT      NOT NULL CHECK (price_amount >= 0),
    currency     CHAR(3)     NOT NULL,
    -- RESTRICT: a category in use cannot be deleted.
    category_id  UUID        NOT NULL REFERENCES categories (id) ON DELETE RESTRICT,
    image_urls   TEXT[]      NOT NULL DEFAULT '{}',
    attributes   JSONB       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(attributes) = 'object'),
    active       BOOLEAN     NOT NULL DEFAULT true,
    version      INT         NOT NULL DEFAULT 1,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Full-text search: the name weighs more than the description.
    search       TSVECTOR GENERATED ALWAYS AS (
                     setweight(to_tsvector('english', name), 'A')
                     || setweight(to_tsvector('english', description), 'B')
                 ) STORED
);

-- fastupdate off: entries go straight into the index rather than a pending list, which
-- every search would scan linearly until a vacuum merges it (and which makes the planner
-- prefer a sequential scan after a bulk import). The catalog is read far more than written.
CREATE INDEX products_search_idx ON products USING GIN (search) WITH (fastupdate = off);
CREATE INDEX products_category_idx ON products (category_id);
-- The listing's sort orders, each with the id as tie-breaker for keyset pagination.
CREATE INDEX products_name_idx ON products (name, id) WHERE active;
CREATE INDEX products_price_idx ON products (price_amount, id) WHERE active;
CREATE INDEX products_newest_idx ON products (created_at DESC, id DESC) WHERE active;
