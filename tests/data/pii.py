import json
rows=[
# (sentence, value, kind, locale)
("Call me on (415) 555-0132 after lunch.","(415) 555-0132","phone","en-US"),
("Best,\nDana Whitfield\nAccount Manager | Northwind\n415.555.0198","415.555.0198","phone","en-US"),
("You can reach our front desk at 212-555-0147 until 6pm.","212-555-0147","phone","en-US"),
("Cheers, Tom — mob 07700 900461","07700 900461","phone","en-GB"),
("Our London office: +44 (0)20 7946 0958","+44 (0)20 7946 0958","phone","en-GB"),
("Ring me on 020 7946 0321 if the parcel doesn't arrive.","020 7946 0321","phone","en-GB"),
("Appelle-moi au 06 12 34 56 78 ce soir.","06 12 34 56 78","phone","fr-FR"),
("Standard : 01.42.68.53.00 (du lundi au vendredi)","01.42.68.53.00","phone","fr-FR"),
("Erreichbar unter 030 12345678 oder per Mail.","030 12345678","phone","de-DE"),
("Tel.: +49 89 1234 5678","+49 89 1234 5678","phone","de-DE"),
("Mi número es 612 345 678, escríbeme por WhatsApp.","612 345 678","phone","es-ES"),
("Chiamami al 347 123 4567 quando arrivi.","347 123 4567","phone","it-IT"),
("Meu celular: (11) 98765-4321","(11) 98765-4321","phone","pt-BR"),
("Contact: +91 98765 43210","+91 98765 43210","phone","en-IN"),
("Mobile 0412 345 678 — text first please","0412 345 678","phone","en-AU"),
("phone: 555 010 4477","555 010 4477","phone","en-US"),
("The card on file is 4111 1111 1111 1111, exp 12/27.","4111 1111 1111 1111","card","en-US"),
("Please charge 5555-5555-5555-4444 for the deposit.","5555-5555-5555-4444","card","en-US"),
("Amex 3782 822463 10005 was declined.","3782 822463 10005","card","en-US"),
("Card number: 4012888888881881","4012888888881881","card","en-US"),
("Karte: 4000 0566 5566 5556, gültig bis 09/26","4000 0566 5566 5556","card","de-DE"),
("Carte bancaire 5105 1051 0510 5100 (expire 03/28)","5105 1051 0510 5100","card","fr-FR"),
("My email is dana.whitfield@northwind-mail.com, write anytime.","dana.whitfield@northwind-mail.com","email","en-US"),
("Envoyez le devis à jean-luc.martin@exemple-mail.fr","jean-luc.martin@exemple-mail.fr","email","fr-FR"),
("IBAN: DE89 3704 0044 0532 0130 00","DE89 3704 0044 0532 0130 00","iban","de-DE"),
("Virement sur FR14 2004 1010 0505 0001 3M02 606 svp","FR14 2004 1010 0505 0001 3M02 606","iban","fr-FR"),
("Bank: GB29NWBK60161331926819","GB29NWBK60161331926819","iban","en-GB"),
("SSN 123-45-6789 is on the W-2.","123-45-6789","ssn","en-US"),
("Her social security number is 219099999 per the form.","219099999","ssn","en-US"),
("Fax (312) 555-0188 for the signed copy.","(312) 555-0188","phone","en-US"),
("Text 650-555-0123 when you're outside.","650-555-0123","phone","en-US"),
("Office line +1 646 555 0172 ext. 4","+1 646 555 0172","phone","en-US"),
("Numéro portable : +33 6 12 34 56 78","+33 6 12 34 56 78","phone","fr-FR"),
("Handy 0171 1234567, ab 18 Uhr","0171 1234567","phone","de-DE"),
("Teléfono fijo 91 123 45 67","91 123 45 67","phone","es-ES"),
("mobile +44 7700 900123 (UK)","+44 7700 900123","phone","en-GB"),
("Visa ending in 1111? The full number was 4111111111111111.","4111111111111111","card","en-US"),
("Signature:\nMaria Rossi\nTel 06 6982 1234","06 6982 1234","phone","it-IT"),
("Please wire to NL91 ABNA 0417 1643 00.","NL91 ABNA 0417 1643 00","iban","nl-NL"),
("WhatsApp me: +55 11 98765 4321","+55 11 98765 4321","phone","pt-BR"),
]
with open("/work/main/tests/data/pii_sentences.jsonl","w") as f:
    for s,v,k,l in rows:
        assert v in s, s
        f.write(json.dumps({"text":s,"value":v,"kind":k,"locale":l},ensure_ascii=False)+"\n")
print(len(rows))
# held-out sentences were appended by hand; see the note in tests/secrets.rs
