"""The sample shop (customers, products, orders) the SQL tools and the docs use.

Small and fixed: 8 customers, 10 products in 3 categories, 40 orders in the first half of
2024, no randomness, so the docs can quote results (ada@example.com has 6 orders) and every
product has a different number of units sold (top_products has no ties).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import DateTime, Engine, Numeric, inspect
from sqlalchemy.dialects.sqlite import DATETIME as SQLITE_DATETIME
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import registry
from sqlmodel import Field, Session, SQLModel

# ISO 8601 in SQLite too, so dates read the same as PostgreSQL's (and sort as text).
TIMESTAMP = DateTime().with_variant(SQLITE_DATETIME(
    storage_format="%(year)04d-%(month)02d-%(day)02dT%(hour)02d:%(minute)02d:%(second)02d",
    regexp=r"(\d+)-(\d+)-(\d+)T(\d+):(\d+):(\d+)",
), "sqlite")


class ShopModel(SQLModel, registry=registry()):
    """Own metadata: the shop's tables must not join the service's own schema."""


class Customer(ShopModel, table=True):
    __tablename__ = "customers"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100)
    email: str = Field(max_length=200, unique=True)
    country: str = Field(max_length=2, description="ISO 3166 code")
    created_at: datetime = Field(sa_type=TIMESTAMP)


class Product(ShopModel, table=True):
    __tablename__ = "products"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100, unique=True)
    category: str = Field(max_length=50, index=True)
    price: Decimal = Field(sa_type=Numeric(10, 2))


class Order(ShopModel, table=True):
    __tablename__ = "orders"
    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(foreign_key="customers.id", index=True)
    product_id: int = Field(foreign_key="products.id", index=True)
    quantity: int
    ordered_at: datetime = Field(sa_type=TIMESTAMP)
    status: str = Field(max_length=20)  # pending, shipped, delivered, cancelled


CUSTOMERS = [  # name, email, country, created_at
    ("Ada Lovelace", "ada@example.com", "GB", "2023-01-15 09:30"),
    ("Grace Hopper", "grace@example.com", "US", "2023-02-03 14:05"),
    ("Alan Turing", "alan@example.com", "GB", "2023-03-21 11:42"),
    ("Edsger Dijkstra", "edsger@example.com", "NL", "2023-05-09 08:15"),
    ("Katherine Johnson", "katherine@example.com", "US", "2023-06-30 16:20"),
    ("Linus Torvalds", "linus@example.com", "FI", "2023-08-12 10:00"),
    ("Hedy Lamarr", "hedy@example.com", "AT", "2023-10-01 13:45"),
    ("Margaret Hamilton", "margaret@example.com", "US", "2023-11-18 17:10"),
]

PRODUCTS = [  # name, category, price
    ("Mechanical Keyboard", "electronics", "89.00"),
    ("Wireless Mouse", "electronics", "24.99"),
    ("USB-C Hub", "electronics", "39.50"),
    ("Noise-Cancelling Headphones", "electronics", "149.00"),
    ("The Art of Computer Programming", "books", "64.95"),
    ("Structure and Interpretation of Computer Programs", "books", "45.00"),
    ("Clean Code", "books", "32.99"),
    ("Desk Lamp", "office", "29.90"),
    ("Dotted Notebook A5", "office", "7.50"),
    ("Fountain Pen", "office", "18.75"),
]

_SICP = "Structure and Interpretation of Computer Programs"
_TAOCP = "The Art of Computer Programming"

ORDERS = [  # customer email, product name, quantity, ordered_at, status
    ("ada@example.com", "Mechanical Keyboard", 1, "2024-01-08 09:12", "delivered"),
    ("grace@example.com", "Wireless Mouse", 2, "2024-01-11 13:00", "delivered"),
    ("katherine@example.com", "USB-C Hub", 3, "2024-01-17 10:05", "delivered"),
    ("alan@example.com", _SICP, 1, "2024-01-20 14:30", "delivered"),
    ("linus@example.com", "Mechanical Keyboard", 3, "2024-01-24 20:10", "delivered"),
    ("edsger@example.com", "Fountain Pen", 1, "2024-01-29 11:20", "delivered"),
    ("grace@example.com", "Noise-Cancelling Headphones", 1, "2024-02-02 16:45", "delivered"),
    ("hedy@example.com", "Desk Lamp", 3, "2024-02-08 13:35", "delivered"),
    ("margaret@example.com", "Noise-Cancelling Headphones", 2, "2024-02-11 10:25",
     "delivered"),
    ("ada@example.com", "Dotted Notebook A5", 5, "2024-02-14 18:30", "delivered"),
    ("katherine@example.com", "Mechanical Keyboard", 1, "2024-02-20 14:40", "delivered"),
    ("alan@example.com", "Wireless Mouse", 1, "2024-02-26 08:50", "delivered"),
    ("ada@example.com", _TAOCP, 1, "2024-03-02 10:45", "delivered"),
    ("edsger@example.com", "Dotted Notebook A5", 8, "2024-03-05 15:55", "delivered"),
    ("linus@example.com", "USB-C Hub", 1, "2024-03-11 07:45", "delivered"),
    ("grace@example.com", "Clean Code", 4, "2024-03-15 09:30", "delivered"),
    ("hedy@example.com", "Fountain Pen", 2, "2024-03-19 16:10", "delivered"),
    ("margaret@example.com", _SICP, 1, "2024-03-24 19:40", "delivered"),
    ("alan@example.com", "Fountain Pen", 5, "2024-03-28 17:05", "delivered"),
    ("grace@example.com", "Dotted Notebook A5", 10, "2024-04-04 11:11", "delivered"),
    ("katherine@example.com", "Wireless Mouse", 3, "2024-04-08 09:00", "delivered"),
    ("edsger@example.com", _SICP, 2, "2024-04-11 10:30", "delivered"),
    ("ada@example.com", "Fountain Pen", 3, "2024-04-19 15:20", "delivered"),
    ("linus@example.com", "Wireless Mouse", 1, "2024-04-23 12:25", "cancelled"),
    ("hedy@example.com", _TAOCP, 1, "2024-04-29 09:20", "delivered"),
    ("katherine@example.com", "Noise-Cancelling Headphones", 1, "2024-05-02 18:20",
     "delivered"),
    ("alan@example.com", _TAOCP, 1, "2024-05-06 12:00", "delivered"),
    ("margaret@example.com", "Desk Lamp", 5, "2024-05-09 11:55", "delivered"),
    ("grace@example.com", "Desk Lamp", 1, "2024-05-13 19:25", "cancelled"),
    ("linus@example.com", "Clean Code", 2, "2024-05-16 15:05", "delivered"),
    ("edsger@example.com", "Desk Lamp", 1, "2024-05-21 13:15", "shipped"),
    ("ada@example.com", "USB-C Hub", 1, "2024-05-27 08:05", "shipped"),
    ("hedy@example.com", "Wireless Mouse", 2, "2024-06-03 14:15", "shipped"),
    ("linus@example.com", "Noise-Cancelling Headphones", 1, "2024-06-06 10:50", "shipped"),
    ("grace@example.com", "Mechanical Keyboard", 2, "2024-06-10 10:10", "shipped"),
    ("katherine@example.com", "Dotted Notebook A5", 6, "2024-06-14 11:35", "shipped"),
    ("alan@example.com", "Dotted Notebook A5", 4, "2024-06-18 09:45", "pending"),
    ("ada@example.com", "Clean Code", 1, "2024-06-21 12:40", "pending"),
    ("edsger@example.com", "Clean Code", 1, "2024-06-25 16:00", "pending"),
    ("margaret@example.com", "USB-C Hub", 1, "2024-06-28 08:30", "pending"),
]

TABLES = [ShopModel.metadata.tables[name] for name in ("customers", "products", "orders")]


def create_sample_data(engine: Engine) -> bool:
    """Create and fill the shop tables in a database that has no tables; True if it did."""
    if inspect(engine).get_table_names():
        return False
    try:
        with Session(engine) as session:
            ShopModel.metadata.create_all(session.connection(), tables=TABLES)
            _fill(session)
            session.commit()
    except DBAPIError:
        # Another process (a second replica) may have filled it first: that is success.
        if set(inspect(engine).get_table_names()) >= {t.name for t in TABLES}:
            return False
        raise
    return True


def _fill(session: Session) -> None:
    customers = {email: Customer(name=name, email=email, country=country,
                                 created_at=datetime.fromisoformat(created))
                 for name, email, country, created in CUSTOMERS}
    products = {name: Product(name=name, category=category, price=Decimal(price))
                for name, category, price in PRODUCTS}
    session.add_all([*customers.values(), *products.values()])
    session.flush()  # ids, in insertion order, for the orders below
    session.add_all([
        Order(customer_id=customers[email].id, product_id=products[product].id,
              quantity=quantity, ordered_at=datetime.fromisoformat(ordered), status=status)
        for email, product, quantity, ordered, status in ORDERS
    ])
