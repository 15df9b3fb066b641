"""factory-boy factories. Rows built here skip the bus: use them to arrange, never to act."""

import factory
from django.contrib.auth.models import Permission, User
from factory.django import DjangoModelFactory, Password

from allocation.models import AllocationView, Batch, OrderLine, Product


class ProductFactory(DjangoModelFactory[Product]):
    class Meta:
        model = Product
        django_get_or_create = ("sku",)

    sku = factory.Sequence(lambda n: f"SKU-{n}")


class BatchFactory(DjangoModelFactory[Batch]):
    class Meta:
        model = Batch

    reference = factory.Sequence(lambda n: f"batch-{n}")
    product = factory.SubFactory(ProductFactory)
    purchased_quantity = 100
    eta = None


class OrderLineFactory(DjangoModelFactory[OrderLine]):
    class Meta:
        model = OrderLine

    orderid = factory.Sequence(lambda n: f"order-{n}")
    batch = factory.SubFactory(BatchFactory)
    sku = factory.SelfAttribute("batch.sku")
    qty = 10


class AllocationViewFactory(DjangoModelFactory[AllocationView]):
    class Meta:
        model = AllocationView

    orderid = factory.Sequence(lambda n: f"order-{n}")
    sku = factory.Sequence(lambda n: f"SKU-{n}")
    batchref = factory.Sequence(lambda n: f"batch-{n}")


class UserFactory(DjangoModelFactory[User]):
    """A user; ``UserFactory(permissions=["add_batch"])`` grants allocation permissions."""

    class Meta:
        model = User
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda user: f"{user.username}@example.com")
    password = Password("secret")

    @factory.post_generation
    def permissions(self, create: bool, extracted: list[str] | None, **kwargs: object) -> None:
        if create and extracted:
            self.user_permissions.add(
                *Permission.objects.filter(
                    content_type__app_label="allocation", codename__in=extracted
                )
            )
