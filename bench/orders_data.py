"""The benchmark's `orders` table (issue 3): its definition and a generator of N rows in SQL,
shared by the sync benchmark and the verification benchmark."""

ORDERS_DDL = """
CREATE TABLE orders (
  id BIGINT UNSIGNED NOT NULL PRIMARY KEY,
  customer_id INT NOT NULL,
  status ENUM('new','paid','shipped','cancelled','refunded') NOT NULL DEFAULT 'new',
  amount DECIMAL(12,2) NOT NULL,
  qty SMALLINT NOT NULL,
  note VARCHAR(255) CHARACTER SET utf8mb4 NOT NULL,
  payload JSON NOT NULL,
  is_gift TINYINT(1) NOT NULL DEFAULT 0,
  created_at DATETIME NOT NULL,
  updated_at DATETIME(6) NOT NULL,
  KEY ix_updated_at (updated_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""

ORDERS_DATA = """
INSERT INTO orders
SELECT seq, seq % 50000 + 1, ELT(seq % 5 + 1, 'new', 'paid', 'shipped', 'cancelled', 'refunded'),
       (seq % 100000) / 100 + 0.99, seq % 20 + 1,
       CONCAT('Bestellung ', seq, ' – Grüße aus Köln, 東京 und São Paulo ', REPEAT('·', seq % 40)),
       JSON_OBJECT('sku', CONCAT('SKU-', seq % 1000), 'qty', seq % 20 + 1, 'tags', JSON_ARRAY('gift', 'ü')),
       seq % 2, '2024-01-01 00:00:00' + INTERVAL (seq % 31536000) SECOND,
       '2024-01-01 00:00:00' + INTERVAL seq SECOND + INTERVAL (seq * 7919 % 1000000) MICROSECOND
FROM seq_1_to_{rows}
"""
