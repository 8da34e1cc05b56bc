from django.urls import path

from redemption import views

app_name = "redemption"
urlpatterns = [
    path("", views.redeem, name="redeem"),
]
