from django.urls import path

from billing import views

app_name = "billing"
urlpatterns = [
    path("webhooks/stripe/", views.stripe_webhook, name="stripe-webhook"),
    path("return/", views.checkout_return, name="return"),
    path("cancel/", views.checkout_cancel, name="cancel"),
]
