from django.urls import path

from referrals import apis

urlpatterns = [
    path("referrals", apis.ReferralSummaryApi.as_view(), name="referral-summary"),
    path("referrals/transfer", apis.ReferralTransferApi.as_view(), name="referral-transfer"),
]
