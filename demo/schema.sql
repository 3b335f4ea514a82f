-- Demo schema and data for the SOURCE database (used by `make demo` and docker-compose).
--
-- Loaded into whatever database is current: bench/demo.py runs it inside `demo_source`, the
-- MariaDB image runs it inside MARIADB_DATABASE. No USE / CREATE DATABASE on purpose.
-- Rows are generated with recursive CTEs and deterministic expressions (no RAND()), so every
-- load produces the same data. Requires MariaDB 10.11 (or MySQL 8).
--
-- Tables and how tables.json syncs them:
--   countries      PK code                      no updated_at -> full refresh
--   customers      PK id                        incremental on updated_at (indexed)
--   products       PK id                        incremental on updated_at
--   orders         PK id BIGINT UNSIGNED        incremental; ENUM, DECIMAL, JSON columns
--   order_items    PK (order_id, line_no)       incremental, composite key
--   stock_levels   PK of 4 columns              incremental, 4-column composite key

SET NAMES utf8mb4;
SET SESSION max_recursive_iterations = 100000;

DROP TABLE IF EXISTS stock_levels, order_items, orders, products, customers, countries;

CREATE TABLE countries (
    code CHAR(2) NOT NULL,
    name VARCHAR(100) NOT NULL,
    native_name VARCHAR(100) NOT NULL,
    currency CHAR(3) NOT NULL,
    PRIMARY KEY (code)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

INSERT INTO countries (code, name, native_name, currency) VALUES
    ('ID', 'Indonesia', 'Indonesia', 'IDR'),
    ('DE', 'Germany', 'Deutschland', 'EUR'),
    ('FR', 'France', 'France', 'EUR'),
    ('ES', 'Spain', 'España', 'EUR'),
    ('TR', 'Türkiye', 'Türkiye', 'TRY'),
    ('CI', 'Côte d''Ivoire', 'Côte d’Ivoire', 'XOF'),
    ('JP', 'Japan', '日本', 'JPY'),
    ('CN', 'China', '中国', 'CNY'),
    ('KR', 'South Korea', '대한민국', 'KRW'),
    ('RU', 'Russia', 'Россия', 'RUB'),
    ('GR', 'Greece', 'Ελλάδα', 'EUR'),
    ('EG', 'Egypt', 'مصر', 'EGP'),
    ('IL', 'Israel', 'ישראל', 'ILS'),
    ('TH', 'Thailand', 'ประเทศไทย', 'THB'),
    ('VN', 'Vietnam', 'Việt Nam', 'VND'),
    ('IS', 'Iceland', 'Ísland', 'ISK'),
    ('NO', 'Norway', 'Norge', 'NOK'),
    ('BR', 'Brazil', 'Brasil', 'BRL'),
    ('US', 'United States', 'United States', 'USD'),
    ('SG', 'Singapore', 'Singapura', 'SGD');

CREATE TABLE customers (
    id INT UNSIGNED NOT NULL AUTO_INCREMENT,
    name VARCHAR(120) NOT NULL,
    email VARCHAR(190) NOT NULL,
    country_code CHAR(2) NOT NULL,
    birth_date DATE NULL,
    is_active TINYINT(1) NOT NULL DEFAULT 1,
    notes TEXT NULL,
    created_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    UNIQUE KEY uq_customers_email (email),
    KEY idx_customers_updated_at (updated_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

INSERT INTO customers (id, name, email, country_code, birth_date, is_active, notes, created_at, updated_at)
WITH RECURSIVE seq (n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < 300)
SELECT
    n,
    CONCAT(ELT(1 + n % 10, 'José Álvarez', 'Zoë Brontë', 'Søren Kierkegård', 'Ольга Иванова', '田中 太郎',
                'Nguyễn Văn An', 'Budi Santoso', 'François Müller', 'Αλέξης Παππάς', 'Siti Nurhaliza 😀'),
           ' #', n),
    CONCAT('customer', n, '@example.com'),
    ELT(1 + n % 20, 'ID', 'DE', 'FR', 'ES', 'TR', 'CI', 'JP', 'CN', 'KR', 'RU',
                    'GR', 'EG', 'IL', 'TH', 'VN', 'IS', 'NO', 'BR', 'US', 'SG'),
    IF(n % 7 = 0, NULL, DATE('1960-01-01') + INTERVAL (n * 53) % 15000 DAY),
    n % 11 <> 0,
    IF(n % 5 = 0, CONCAT('Prefers contact in the morning — note ', n), NULL),
    TIMESTAMP('2024-01-01 08:00:00') + INTERVAL n HOUR,
    TIMESTAMP('2024-06-01 00:00:00') + INTERVAL n * 17 MINUTE + INTERVAL n * 1234 MICROSECOND
FROM seq;

CREATE TABLE products (
    id INT UNSIGNED NOT NULL,
    sku VARCHAR(32) NOT NULL,
    name VARCHAR(200) NOT NULL,
    category ENUM('book', 'food', 'tool', 'toy') NOT NULL,
    price DECIMAL(12, 2) NOT NULL,
    weight_kg DOUBLE NULL,
    is_active TINYINT(1) NOT NULL DEFAULT 1,
    updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    UNIQUE KEY uq_products_sku (sku),
    KEY idx_products_updated_at (updated_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

INSERT INTO products (id, sku, name, category, price, weight_kg, is_active, updated_at)
WITH RECURSIVE seq (n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < 120)
SELECT
    n,
    CONCAT('SKU-', LPAD(n, 5, '0')),
    CONCAT(ELT(1 + n % 6, 'Kopi Luwak', 'Crème brûlée mix', 'Schraubenschlüssel', 'Lego® set', '抹茶 (matcha)',
                'Smørrebrød kit'),
           ' ', n),
    ELT(1 + n % 4, 'book', 'food', 'tool', 'toy'),
    ROUND(1 + (n * 37 % 10000) / 7, 2),
    IF(n % 9 = 0, NULL, (n % 50) / 4 + 0.125),
    n % 13 <> 0,
    TIMESTAMP('2024-05-01 00:00:00') + INTERVAL n * 3 HOUR + INTERVAL n * 999 MICROSECOND
FROM seq;

CREATE TABLE orders (
    id BIGINT UNSIGNED NOT NULL,
    customer_id INT UNSIGNED NOT NULL,
    status ENUM('new', 'paid', 'shipped', 'delivered', 'cancelled') NOT NULL DEFAULT 'new',
    amount DECIMAL(14, 2) NOT NULL,
    currency CHAR(3) NOT NULL DEFAULT 'IDR',
    payload JSON NULL,
    ordered_at DATETIME NOT NULL,
    updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    KEY idx_orders_customer (customer_id),
    KEY idx_orders_updated_at (updated_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Ids start above 2^32 so a 32-bit column on the target would not hold them.
INSERT INTO orders (id, customer_id, status, amount, currency, payload, ordered_at, updated_at)
WITH RECURSIVE seq (n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < 500)
SELECT
    5000000000 + n,
    1 + (n * 7) % 300,
    ELT(1 + n % 5, 'new', 'paid', 'shipped', 'delivered', 'cancelled'),
    ROUND((n * 7919 % 100000) * 1.25, 2),
    ELT(1 + n % 3, 'IDR', 'EUR', 'USD'),
    IF(n % 10 = 0, NULL,
       JSON_OBJECT('channel', ELT(1 + n % 3, 'web', 'app', 'toko'),
                   'gift', n % 4 = 0,
                   'note', IF(n % 6 = 0, 'Bitte nicht knicken — 割れ物注意', NULL),
                   'tags', JSON_ARRAY(CONCAT('t', n % 5), CONCAT('batch-', n DIV 100)))),
    TIMESTAMP('2024-06-01 09:00:00') + INTERVAL n * 41 MINUTE,
    TIMESTAMP('2024-06-01 09:30:00') + INTERVAL n * 41 MINUTE + INTERVAL n * 4321 MICROSECOND
FROM seq;

CREATE TABLE order_items (
    order_id BIGINT UNSIGNED NOT NULL,
    line_no SMALLINT UNSIGNED NOT NULL,
    product_id INT UNSIGNED NOT NULL,
    quantity INT NOT NULL,
    unit_price DECIMAL(12, 2) NOT NULL,
    discount DECIMAL(5, 4) NOT NULL DEFAULT 0,
    updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (order_id, line_no),
    KEY idx_order_items_product (product_id),
    KEY idx_order_items_updated_at (updated_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- One to three lines per order.
INSERT INTO order_items (order_id, line_no, product_id, quantity, unit_price, discount, updated_at)
WITH RECURSIVE
    seq (n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < 500),
    line (l) AS (SELECT 1 UNION ALL SELECT l + 1 FROM line WHERE l < 3)
SELECT
    5000000000 + n,
    l,
    1 + (n * 13 + l * 29) % 120,
    1 + (n + l) % 6,
    ROUND(1 + ((n * 13 + l * 29) * 37 % 10000) / 7, 2),
    IF((n + l) % 8 = 0, 0.1, 0),
    TIMESTAMP('2024-06-01 09:30:00') + INTERVAL n * 41 MINUTE + INTERVAL l SECOND
FROM seq JOIN line ON l <= 1 + n % 3;

CREATE TABLE stock_levels (
    warehouse_code CHAR(3) NOT NULL,
    product_id INT UNSIGNED NOT NULL,
    batch_no VARCHAR(20) NOT NULL,
    bin_no SMALLINT UNSIGNED NOT NULL,
    quantity INT NOT NULL,
    counted_on DATE NOT NULL,
    updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (warehouse_code, product_id, batch_no, bin_no),
    KEY idx_stock_levels_updated_at (updated_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- 3 warehouses x 120 products x 2 bins.
INSERT INTO stock_levels (warehouse_code, product_id, batch_no, bin_no, quantity, counted_on, updated_at)
WITH RECURSIVE
    seq (n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < 120),
    wh (w) AS (SELECT 1 UNION ALL SELECT w + 1 FROM wh WHERE w < 3),
    bin (b) AS (SELECT 1 UNION ALL SELECT b + 1 FROM bin WHERE b < 2)
SELECT
    ELT(w, 'JKT', 'SBY', 'MDN'),
    n,
    CONCAT('B', DATE_FORMAT(DATE('2024-01-01') + INTERVAL n % 12 MONTH, '%Y%m'), '-', w),
    b,
    (n * 31 + w * 7 + b) % 250,
    DATE('2024-06-01') + INTERVAL (n + w) % 30 DAY,
    TIMESTAMP('2024-06-15 00:00:00') + INTERVAL n * 5 MINUTE + INTERVAL w * 100 + b SECOND
FROM seq CROSS JOIN wh CROSS JOIN bin;
